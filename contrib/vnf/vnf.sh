#!/bin/sh
# Tessera's example network function: dockwall's modern equivalent.
#
# A container that Tessera attaches as a service instance (`tessera service
# add NAME --service SERVICE --docker CONTAINER`) gets a `left` and a `right`
# interface, each with a routing table of its own, and forwarding on: what
# arrives on left leaves by right and back. This script adds the firewall:
# it counts what the function forwards and drops the TCP ports listed in
# $DROP (a comma list, e.g. DROP=22,23). `nft list ruleset` inside shows the
# counters. It then waits until the container is stopped.
set -e
{
    echo 'table inet vnf {'
    echo '  chain forward {'
    echo '    type filter hook forward priority 0; policy accept;'
    if [ -n "$DROP" ]; then
        echo "    tcp dport { $DROP } counter drop"
    fi
    echo '    counter'
    echo '  }'
    echo '}'
} > /tmp/vnf.nft
nft -f /tmp/vnf.nft
trap 'exit 0' TERM INT
while :; do sleep 1; done
