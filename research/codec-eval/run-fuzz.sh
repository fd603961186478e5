#!/bin/sh
# Re-run the fuzz measurements (~9 minutes). Output: results-fuzz.md
set -e
B=./target/release/codec-eval
{
  $B fuzz1 "mqtt-proto" 15 2000000
  $B fuzz1 "rmqtt-codec" 20 2000000
  $B fuzz1 "mqute-codec" 30 2000000
  $B fuzz1 "mqttbytes" 30 2000000
  $B fuzz1 "mqttrs" 30 2000000
} > results-fuzz.md 2> /dev/null   # stderr dropped: mqttbytes 0.6 v5 has dbg! calls that print ~230 MB
