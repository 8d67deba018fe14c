"""The sendguard policy daemon: Postfix SMTP access policy delegation (check_policy_service)."""
