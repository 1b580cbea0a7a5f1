"""Workflow service."""
