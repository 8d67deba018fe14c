"""The ``sendguard`` command: the one place where the shared core and both services meet.

:mod:`.settings` composes the config (the core's part, then each service's
sections) and :mod:`.commands` runs the sub-commands. Nothing outside this
package imports both services, and nothing outside it imports it.
"""
