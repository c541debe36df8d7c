"""Print pip constraints that pin every `>=` lower bound of setup.py's install_requires (CI's oldest stack)."""
import ast
import pathlib
import re

SETUP = pathlib.Path(__file__).resolve().parent.parent / "setup.py"

for node in ast.walk(ast.parse(SETUP.read_text())):
    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "INSTALL_REQUIRES":
        for requirement in ast.literal_eval(node.value):
            floor = re.match(r"([A-Za-z0-9_.-]+).*?>=\s*([^,;\s]+)", requirement)
            if floor:
                print(f"{floor[1]}=={floor[2]}")
