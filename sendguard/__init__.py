"""sendguard: outbound-mail guardrails for a self-run Postfix.

Shared parts live here (config, streams, CLI, logging, metrics endpoint); the
milter is ``sendguard_milter`` (folder ``milter/``) and the policy daemon is
``sendguard_policyd`` (folder ``policyd/``).
"""

__version__ = "0.1.0"
