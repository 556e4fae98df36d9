"""Prints, for each Sandboxfile given, Python jsonschema's verdict against the committed schema.

An independent implementation (Python's `jsonschema` and `tomllib`) of what msb's schema stage
decides: `valid`, `invalid`, or `not-toml` when the file does not parse as TOML.
Usage: python3 jsonschema_verdict.py SCHEMA FILE...
"""

import json
import sys
import tomllib

import jsonschema


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for path in sys.argv[2:]:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            print("not-toml")
            continue
        print("valid" if validator.is_valid(document) else "invalid")


if __name__ == "__main__":
    main()
