import sys
from pathlib import Path

# Tests import helpers from tests/graphs.py as `graphs`.
sys.path.insert(0, str(Path(__file__).resolve().parent))
