import os

from hypothesis import HealthCheck, settings

# CI keeps example counts modest; set HYPOTHESIS_PROFILE=thorough for long local runs.
settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
