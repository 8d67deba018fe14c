"""The sendguard milter: link repair and DKIM signing inside an explicit trusted-host scope.

Installed as ``sendguard_milter``: pymilter's C extension is called ``milter``
and must not be shadowed.
"""
