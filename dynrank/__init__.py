"""dynrank: dynamic-rank DoRA (Mao et al., ACL 2024) and its baselines in one training loop."""

__version__ = "0.1.0"
