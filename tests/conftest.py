"""Shared pytest configuration for the whole test suite."""

import os

from hypothesis import settings

# HYPOTHESIS_PROFILE selects the profile. "dev" (the default) keeps local runs
# quick, and .ci/run sets "ci". An unknown name fails the session at start.
settings.register_profile("dev", max_examples=25)
settings.register_profile("ci", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
