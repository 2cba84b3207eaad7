# Shared by bench/run and bench/micro: paths, builds, tools, data, timing.
# Sourced, not run.

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
KAFKA_SCRIPT=$ROOT/scripts/kafka/kafka
PEER_DIR=$BENCH/peers/kafka-streams
# Own target dir: other engineers build debug and release in target/, and a
# release build with fat LTO must not fight over their lock or artefacts.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/bench}
TRAILSPIKE=$CARGO_TARGET_DIR/release/trailspike
# Generated inputs are kept between runs (same arguments, same bytes).
DATA_DIR=${BENCH_DATA_DIR:-$ROOT/target/bench/data}

say() { printf '%s\n' "$*" >&2; }
die() { say "bench: $*"; exit 1; }

# ---------------------------------------------------------------- tools

# apt-get only for what is missing: the benchmark must not need root when
# the machine already has everything.
need_debian_package() {
    local command=$1 package=$2
    command -v "$command" >/dev/null && return 0
    say "==> installing $package"
    apt-get install -y -q "$package" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$package" >/dev/null; } ||
        die "cannot install $package (needed for $command)"
}

ensure_tools() {
    need_debian_package kcat kcat
    # /usr/bin/time, not the shell keyword: it reports peak RSS.
    [[ -x /usr/bin/time ]] || need_debian_package /usr/bin/time time
    need_debian_package taskset util-linux
    need_debian_package python3 python3
    need_debian_package curl curl
}

build_trailspike() {
    say "==> building trailspike (release, $CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release --quiet)
}

build_peer() {
    say "==> building the Kafka Streams peer"
    mvn -q -B -ntp -f "$PEER_DIR/pom.xml" package
}

peer_classpath() {
    printf '%s:%s' "$PEER_DIR/target/kafka-streams-peer-1.0.jar" \
        "$(<"$PEER_DIR/target/classpath.txt")"
}

# ---------------------------------------------------------------- data

# Generates N records spread over HOURS hours and ARNS principals, unless a
# file made with the same arguments exists. Prints its path.
#
# The rate is set a little above RATE_N / HOURS (RATE_N defaults to N) so
# that --limit, not the rate, decides the count: the file has exactly N
# records and, when RATE_N = N, spans close to HOURS hours (the daily
# rhythm makes the real rate vary around the mean). With the same rate, a
# smaller N gives a prefix of the same stream (the generator guarantees it),
# which is how bench/profile gets a sample of the benchmark's mix.
generate_records() {
    local n=$1 hours=$2 arns=$3 spikes=$4 rate_n=${5:-$1} rate
    rate=$(python3 -c "print(round($rate_n / $hours * 1.15, 1))")
    local file=$DATA_DIR/records-n$n-h$hours-a$arns-s$spikes-r$rate.jsonl
    if [[ -s $file && -f $file.done ]]; then
        say "==> reusing $file"
    else
        mkdir -p "$DATA_DIR"
        say "==> generating $n records ($hours h, $arns ARNs, $rate/h, $spikes spikes)"
        "$TRAILSPIKE" generate --limit "$n" --hours "$hours" --arns "$arns" \
            --rate-per-hour "$rate" --spikes "$spikes" \
            --output "$file" --spikes-out "$file.spikes" >&2
        touch "$file.done"
    fi
    echo "$file"
}

# Event time of the last line: the generator writes in event-time order
# (no --disorder), so it is the latest.
last_event_time() {
    tail -n 1 "$1" | grep -o '"eventTime":"[^"]*"' | head -n 1 | cut -d'"' -f4
}

# ---------------------------------------------------------------- timing

# Cumulative user+system CPU seconds of a process (for the broker, whose
# work while a consumer runs is part of that consumer's bill).
cpu_seconds_of() {
    local pid=$1 ticks
    ticks=$(getconf CLK_TCK)
    awk -v hz="$ticks" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$pid/stat"
}

# measure NAME COMMAND...: runs COMMAND under /usr/bin/time and appends
# "NAME wall_s user_s sys_s max_rss_kb broker_cpu_s" to $RESULTS; returns
# COMMAND's exit status. The wall time is taken here with nanosecond
# resolution (time's %e has two decimals); the broker's CPU is its /proc
# delta over the same span.
measure() {
    local name=$1
    shift
    local timing=$WORK/$name.time broker_before broker_after t0 t1 status=0
    broker_before=$(broker_cpu)
    t0=$(date +%s.%N)
    /usr/bin/time -o "$timing" -f '%U %S %M' "$@" || status=$?
    t1=$(date +%s.%N)
    broker_after=$(broker_cpu)
    ((status == 0)) || return "$status"
    local user sys rss
    read -r user sys rss <"$timing"
    printf '%s %s %s %s %s %s\n' "$name" \
        "$(python3 -c "print(round($t1 - $t0, 3))")" "$user" "$sys" "$rss" \
        "$(python3 -c "print(round($broker_after - $broker_before, 2))")" >>"$RESULTS"
}

# CPU seconds of the broker so far; 0 when no broker runs (bench/micro).
broker_cpu() {
    if [[ -n ${TRAILSPIKE_KAFKA_PID_FILE:-} && -f $TRAILSPIKE_KAFKA_PID_FILE ]]; then
        cpu_seconds_of "$(<"$TRAILSPIKE_KAFKA_PID_FILE")"
    else
        echo 0
    fi
}

machine_facts() {
    local model memory
    model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    memory=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    printf 'machine: %s cores (nproc), %s, %s RAM, %s, kernel %s\n' \
        "$(nproc)" "$model" "$memory" \
        "$(grep -o -m1 -w 'avx512f' /proc/cpuinfo >/dev/null && echo 'AVX-512' || echo 'no AVX-512')" \
        "$(uname -r)"
}
