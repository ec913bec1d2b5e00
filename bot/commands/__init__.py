"""Clerks' chat commands: Chinese first, English aliases; help is generated from the registry."""
