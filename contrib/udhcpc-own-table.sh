#!/bin/sh
# A busybox udhcpc hook for dockwall's per-interface tables, for a
# container whose interfaces configure themselves by DHCP (attached with
# --dhcp): the lease's address, and its classless static routes (option
# 121, which Tessera sends with the default route first among them) into
# the interface's own table, and what arrives on the interface routed by
# the peer interface's table.
#
#   TABLE=100 PEER_TABLE=101 udhcpc -i left  -s /path/udhcpc-own-table.sh
#   TABLE=101 PEER_TABLE=100 udhcpc -i right -s /path/udhcpc-own-table.sh
#
# Without TABLE it configures the main table, as the default script does.
case "$1" in
  deconfig)
    ip addr flush dev "$interface" scope global
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface" scope global
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    table=${TABLE:-main}
    ip route replace "$(ip -o -4 addr show dev "$interface" | awk '{print $4}')" dev "$interface" table "$table" 2>/dev/null
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface" table "$table"; shift 2; done
    if [ -n "$TABLE" ] && [ -n "$PEER_TABLE" ]; then
      ip rule show | grep -q "iif $interface lookup $PEER_TABLE" || ip rule add iif "$interface" lookup "$PEER_TABLE" pref 32000
    fi
    ;;
esac
exit 0
