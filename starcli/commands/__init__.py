"""Thin Typer command modules: parse, validate, build a config, call one engine function."""
