from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def experiment_dict(**over) -> dict:
    """A small valid experiment as the YAML loader would give it."""
    d = {
        "name": "t",
        "seed": 7,
        "content": {"size": "4MiB"},
        "topology": "star",
        "seeders": [{"name": "origin", "client": "transmission",
                     "access": {"up": "20mbit", "down": "20mbit", "queue": 100}}],
        "peers": [{"name": "leecher", "count": 4, "client": "transmission",
                   "access": {"up": "2mbit", "down": "10mbit", "queue": 50}}],
        "timeout": "2m",
    }
    d.update(over)
    return d


@pytest.fixture
def exp_dict():
    return experiment_dict()


def pytest_collection_modifyitems(items):
    """Every test under tests/integration/ carries the integration marker, so that
    `-m "not integration"` runs the pure tests only, whatever a module declares."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
