"""Benchmark scenarios: each module has TITLE and ``async def run(bench) -> list[Row]``."""
