"""Reliability tests: worker crashes, Redis restarts and S3 outages, with real components."""
