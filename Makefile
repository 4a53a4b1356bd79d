# The two commands the README opens with, and a few for day-to-day work.
.PHONY: demo test unit stack-up stack-down schemas

demo:
	./deploy/bootstrap.sh
	.venv/bin/python deploy/devstack.py up >/dev/null
	.venv/bin/python -m calltime.demo

test:
	./deploy/bootstrap.sh
	.venv/bin/ruff check calltime services fakes demo deploy tests bench
	.venv/bin/python deploy/devstack.py up >/dev/null
	.venv/bin/python -m pytest -q

unit:
	.venv/bin/python -m pytest -q tests/unit

stack-up:
	.venv/bin/python deploy/devstack.py up

stack-down:
	.venv/bin/python deploy/devstack.py down
