"""Learners that fit personalized rewards from offline preferences and plan against them."""
