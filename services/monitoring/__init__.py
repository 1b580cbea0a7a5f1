"""Monitoring service: attendance, compliance, return-risk alerts, dashboards."""
