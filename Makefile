# The two entry commands (see README): `make demo` and `make test`. Both set up everything from scratch.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV := source scripts/env.sh
PYTEST_ARGS ?=
# kilted (default) or jazzy: `make test ROS_DISTRO=jazzy` builds and tests against the Jazzy wheels, in their own
# .venv-jazzy / build-jazzy / install-jazzy (scripts/distro.sh)
ROS_DISTRO ?= kilted
export ROS_DISTRO

.PHONY: help setup test lint demo clean

help:
	@echo "make demo   - set up, then run the node on the bundled data (writes demo_out/)"
	@echo "make test   - set up, then run the whole test suite (unit + ROS integration + lint)"
	@echo "make setup  - only the setup (.venv, pinned wheels, colcon build into install/)"
	@echo "             ROS_DISTRO=jazzy (any target): the same against ROS 2 Jazzy, in .venv-jazzy and install-jazzy/"

setup:
	@bash scripts/setup.sh

test: setup
	@bash scripts/run_tests.sh $(PYTEST_ARGS)

lint: setup
	@$(ENV) && ruff check .

demo: setup
	@bash scripts/demo.sh

clean:
	rm -rf build install log build-jazzy install-jazzy log-jazzy demo_out
