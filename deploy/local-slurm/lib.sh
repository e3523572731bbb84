#!/usr/bin/env bash
# Shell helpers shared by start.sh and stop.sh (sourced).

# alive PIDFILE NAME: the process in PIDFILE exists, is not a zombie, and is called NAME
alive() {
    local pid
    [ -r "$1" ] || return 1
    pid="$(tr -dc 0-9 2>/dev/null < "$1")"  # the file may vanish while a daemon stops
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]
}

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
