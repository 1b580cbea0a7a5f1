"""Funds service."""
