"""Tests of the Helm chart (charts/shellgate) and the deploy/ files."""
