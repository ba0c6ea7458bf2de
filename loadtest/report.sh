#!/bin/sh
# report.sh [CSV] [OUT] -- turn a `loadgen --csv` file into a PNG.
#
# Throughput (all responses, 2xx, 4xx, 5xx, transport errors per second) on
# the upper panel, latency (p50, p90, p99, max) on the lower one. Uses
# gnuplot's pngcairo terminal when it has one (gnuplot-nox does), else png.
#
#   sh loadtest/report.sh build/demo/lock.csv build/report.png
#   make report CSV=run.csv OUT=run.png
set -eu

csv=${1:-build/demo/lock.csv}
out=${2:-build/report.png}
here=$(dirname "$0")

die() { echo "report: $*" >&2; exit 1; }

command -v gnuplot >/dev/null 2>&1 || die "gnuplot not installed (apt-get install gnuplot-nox)"
[ -f "$csv" ] || die "$csv: no such file (loadgen --csv FILE writes one)"
head -n 1 "$csv" | grep -q '^second,requests,ok_2xx,status_4xx,status_5xx,errors,p50_ms' ||
    die "$csv: not a loadgen --csv file (unexpected header)"
[ "$(wc -l < "$csv")" -ge 2 ] || die "$csv: no data rows"
case "$csv$out" in *"'"* | *'"'*) die "quotes in file names are not supported" ;; esac

if gnuplot -e 'set terminal' 2>&1 | grep -q pngcairo; then term=pngcairo; else term=png; fi
mkdir -p "$(dirname "$out")"
gnuplot -e "csv='$csv'; out='$out'; term='$term'; title='$(basename "$csv")'" "$here/report.gp"
[ -s "$out" ] || die "gnuplot wrote nothing to $out"
echo "report: $out ($term)"
