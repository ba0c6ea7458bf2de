# soak.gp: the soak test's plot (soak.sh runs it with dir=OUT): claims per
# second, latency, and each replica's RSS over time, one x axis.
set terminal pngcairo size 1200,1100 font "sans,10" noenhanced
set output dir."/soak.png"
set datafile separator tab
set key outside right top vertical
set grid
set lmargin 12
set rmargin 22
set xlabel "second of the soak"
pos(x) = x > 0 ? x : NaN
tl = dir."/timeline.tsv"
rs = dir."/rss.tsv"

set multiplot layout 3,1 title "couponsvc soak: open loop at 80 % of capacity, rolling restart halfway"

set title "throughput (2xx answers)"
set ylabel "claims / s"
set yrange [0:*]
plot tl using 1:($2+$3) skip 1 with lines lw 2 lc rgb "black" title "all", \
     tl using 1:2 skip 1 with lines lw 1 lc rgb "#d62728" title "hot coupon", \
     tl using 1:3 skip 1 with lines lw 1 lc rgb "#1f77b4" title "1000 coupons"

set title "latency per second (from the intended send time)"
set ylabel "ms (log scale)"
set logscale y
set yrange [*:*]
plot tl using 1:(pos($5)) skip 1 with lines lw 1.5 lc rgb "#d62728" title "hot p99", \
     tl using 1:(pos($4)) skip 1 with lines lw 1 lc rgb "#f4a582" title "hot p50", \
     tl using 1:(pos($7)) skip 1 with lines lw 1.5 lc rgb "#1f77b4" title "spread p99", \
     tl using 1:(pos($6)) skip 1 with lines lw 1 lc rgb "#92c5de" title "spread p50"
unset logscale y

set title "RSS per replica (a new line where the restart replaced a process)"
set ylabel "MiB"
set yrange [0:*]
# The first line names the replicas (the columns).
stats rs skip 1 nooutput
n = STATS_columns
plot for [i=2:n] rs using 1:i with linespoints pt 7 ps 0.3 lw 1 title columnheader(i)

unset multiplot
set output
