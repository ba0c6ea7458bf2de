# report.gp -- plot a `loadgen --csv` file: throughput above, latency below.
#
# Run by report.sh, which sets: csv (input), out (PNG), term ("pngcairo" or
# "png", whichever this gnuplot has) and title.
#
# CSV columns: 1 second, 2 requests, 3 ok_2xx, 4 status_4xx, 5 status_5xx,
# 6 errors, 7 p50_ms, 8 p90_ms, 9 p99_ms, 10 max_ms.

if (term eq "pngcairo") {
    set terminal pngcairo size 1200,800 font "sans,10" noenhanced
} else {
    set terminal png size 1200,800 noenhanced
}
set output out
set datafile separator comma
set key outside right top vertical
set grid
set xlabel "second of the run"
set lmargin 12
set rmargin 20

# A second with no responses has no latency; leave a gap rather than a 0
# (which a log scale cannot show anyway).
pos(x) = x > 0 ? x : NaN

# Half a second of room on either side, so a one-second run still plots.
stats csv using 1 skip 1 nooutput
set xrange [STATS_min - 0.5 : STATS_max + 0.5]
if (STATS_max - STATS_min <= 30) { set xtics 1 }

set multiplot layout 2,1 title title

set title "throughput"
set ylabel "responses / s"
set yrange [0:*]
plot csv using 1:2 skip 1 with linespoints lw 2 pt 7 ps 0.4 lc rgb "black" title "all", \
     csv using 1:3 skip 1 with linespoints lw 1.5 pt 7 ps 0.3 lc rgb "#2a9d2a" title "2xx", \
     csv using 1:4 skip 1 with linespoints lw 1.5 pt 7 ps 0.3 lc rgb "#e08a00" title "4xx", \
     csv using 1:5 skip 1 with linespoints lw 1.5 pt 7 ps 0.3 lc rgb "#d62728" title "5xx", \
     csv using 1:6 skip 1 with linespoints lw 1.5 pt 7 ps 0.3 lc rgb "#8c3fbf" title "errors"

set title "latency (an open-loop run measures from the intended send time)"
set ylabel "ms (log scale)"
set logscale y
set yrange [*:*]
plot csv using 1:(pos($7)) skip 1 with linespoints lw 2 pt 7 ps 0.4 lc rgb "#1f77b4" title "p50", \
     csv using 1:(pos($8)) skip 1 with linespoints lw 1.5 pt 7 ps 0.3 lc rgb "#2a9d2a" title "p90", \
     csv using 1:(pos($9)) skip 1 with linespoints lw 1.5 pt 7 ps 0.3 lc rgb "#e08a00" title "p99", \
     csv using 1:(pos($10)) skip 1 with linespoints lw 1 pt 7 ps 0.3 lc rgb "#d62728" title "max"

unset multiplot
set output
