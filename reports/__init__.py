"""Backtest reports: progress, a streaming result collector, and the HTML page with plots."""
