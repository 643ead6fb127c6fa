.PHONY: test demo lint
test:  ## everything CI runs: installs mosquitto (apt, as root), a venv, then lint, types, tests
	scripts/test.sh
lint:
	.venv/bin/ruff check agent coordinator gpuwarden_common tests bench && .venv/bin/mypy
