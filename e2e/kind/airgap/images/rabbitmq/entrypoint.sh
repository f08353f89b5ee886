#!/bin/bash
# The official RabbitMQ image's behaviour, reduced to what the chatmesh operator uses: the
# default user from RABBITMQ_DEFAULT_USER/_PASS (written to the configuration file in the data
# directory), listening on every interface.
set -euo pipefail
{
  echo "listeners.tcp.default = 5672"
  echo "loopback_users.guest = true"
  [[ -n "${RABBITMQ_DEFAULT_USER:-}" ]] && echo "default_user = $RABBITMQ_DEFAULT_USER"
  [[ -n "${RABBITMQ_DEFAULT_PASS:-}" ]] && echo "default_pass = $RABBITMQ_DEFAULT_PASS"
  true
} >"$RABBITMQ_CONFIG_FILE"
unset RABBITMQ_DEFAULT_USER RABBITMQ_DEFAULT_PASS
exec "$@"
