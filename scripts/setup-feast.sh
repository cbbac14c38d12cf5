#!/usr/bin/env bash
# Installs the Feast peer reference venv at .stack/feast-venv from scripts/requirements-feast.txt
# (scripts/setup-peer-venv.sh feast; --force recreates it).
exec bash "$(dirname "${BASH_SOURCE[0]}")/setup-peer-venv.sh" feast "$@"
