# The two entry commands (see README): `make demo` and `make test`. Both set up everything from scratch.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV := source scripts/env.sh
PYTEST_ARGS ?=

.PHONY: help setup test lint demo clean

help:
	@echo "make demo   - set up, then run the node on the bundled data (writes demo_out/)"
	@echo "make test   - set up, then run the whole test suite (unit + ROS integration + lint)"
	@echo "make setup  - only the setup (.venv, pinned wheels, colcon build into install/)"

setup:
	@bash scripts/setup.sh

test: setup
	@bash scripts/run_tests.sh $(PYTEST_ARGS)

lint: setup
	@$(ENV) && ruff check .

demo: setup
	@bash scripts/demo.sh

clean:
	rm -rf build install log demo_out
