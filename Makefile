.PHONY: demo test lint

demo:  ## install into .venv and run the live demo (embedded broker, 16 simulated nodes)
	scripts/setup.sh
	.venv/bin/gpuwarden demo

test:  ## everything CI runs: apt packages (as root), .venv, ruff, mypy --strict, pytest
	scripts/test.sh

lint:
	.venv/bin/ruff check agent coordinator gpuwarden_common tests bench && .venv/bin/mypy
