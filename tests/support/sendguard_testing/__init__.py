"""Test and benchmark clients for sendguard's services (not part of the installed package)."""
