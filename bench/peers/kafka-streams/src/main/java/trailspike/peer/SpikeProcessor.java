package trailspike.peer;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The detecting half of the peer, one instance per task of ARNs: counts
 * calls per (window, ARN), keeps trailspike's {@link Watermark} from the
 * {@link Mark}s of every source, and when the watermark passes the end of
 * windows closes them oldest first: updates each active ARN's baseline
 * (SPEC.md section 3) and forwards an alert as JSON keyed by the ARN when
 * the window is a spike (section 4).
 *
 * <p>This replaces Kafka Streams' windowed aggregation with grace and
 * suppress, whose closing follows the task's stream time, the highest
 * timestamp seen from any source: behind a repartition topic that is the
 * fastest upstream task's time, not the slowest's, so windows were closed
 * early and the calls of slower sources dropped as expired.
 *
 * <p>A call whose window has already closed is late: counted in
 * {@link Activity#late()} and not merged, as in trailspike.
 */
public final class SpikeProcessor implements Processor<String, Mark, String, String> {
    static final String BASELINES = "baselines";
    /** Open (window, ARN) counts, keyed so that key order is window order. */
    static final String COUNTS = "open-counts";
    /** Each source's high-water mark, and the watermark under {@link #WATERMARK}. */
    static final String CLOCKS = "clocks";
    private static final int WATERMARK = -1;
    private static final double DEVIATION_THRESHOLD = 3.0;
    private static final long DATA_POINT_THRESHOLD = 15;
    private static final long WIDTH_MS = SpikePeer.WINDOW.toMillis();

    private final Activity activity;
    private final Watermark watermark;
    private ProcessorContext<String, String> context;
    private KeyValueStore<String, Baseline> baselines;
    private KeyValueStore<Bytes, Long> counts;
    private KeyValueStore<Integer, Long> clocks;
    /** Every window starting before this has been closed. */
    private long closedBefore = Watermark.NONE;

    /**
     * @param expectedSources how many sources feed this task: every input
     *                        partition after a repartition, its own one in
     *                        by-key mode
     */
    SpikeProcessor(Activity activity, int expectedSources) {
        this.activity = activity;
        this.watermark = new Watermark(expectedSources, SpikePeer.GRACE.toMillis());
    }

    @Override
    public void init(ProcessorContext<String, String> context) {
        this.context = context;
        this.baselines = context.getStateStore(BASELINES);
        this.counts = context.getStateStore(COUNTS);
        this.clocks = context.getStateStore(CLOCKS);
        try (KeyValueIterator<Integer, Long> saved = clocks.all()) {
            saved.forEachRemaining(kv -> {
                if (kv.key == WATERMARK) {
                    watermark.restoreValue(kv.value);
                } else {
                    watermark.restore(kv.key, kv.value);
                }
            });
        }
    }

    @Override
    public void process(Record<String, Mark> record) {
        activity.touch();
        Mark mark = record.value();
        switch (mark.kind()) {
            case CALL -> {
                count(record.key(), mark.timeMs());
                watermark.observe(mark.source(), mark.timeMs());
            }
            case PROGRESS -> {
                watermark.observe(mark.source(), mark.timeMs());
                // Rare (about once per source and hour), so saved each time.
                clocks.put(mark.source(), watermark.maxTimeMs(mark.source()));
            }
            case IDLE -> watermark.idle(mark.source());
        }
        closeReady(record);
    }

    /** As trailspike: the late test comes before the call moves time on. */
    private void count(String arn, long timeMs) {
        long start = Math.floorDiv(timeMs, WIDTH_MS) * WIDTH_MS;
        if (start + WIDTH_MS <= watermark.value()) {
            activity.late();
            return;
        }
        Bytes key = key(start, arn);
        Long sofar = counts.get(key);
        counts.put(key, sofar == null ? 1L : sofar + 1);
    }

    /**
     * Closes every window that ends at or before the watermark, oldest
     * first, so that each ARN's baseline takes its windows in order.
     */
    private void closeReady(Record<String, Mark> trigger) {
        if (watermark.value() == Watermark.NONE) {
            return;
        }
        long limit = Math.floorDiv(watermark.value(), WIDTH_MS) * WIDTH_MS;
        if (limit <= closedBefore) {
            return;
        }
        List<Bytes> done = new ArrayList<>();
        // key(limit, "") sorts after every key of an earlier window and
        // before every key of window `limit`, and no ARN is empty.
        try (KeyValueIterator<Bytes, Long> ready = counts.range(key(closedBefore, ""), key(limit, ""))) {
            while (ready.hasNext()) {
                KeyValue<Bytes, Long> entry = ready.next();
                ByteBuffer buf = ByteBuffer.wrap(entry.key.get());
                long start = buf.getLong() ^ Long.MIN_VALUE;
                String arn = StandardCharsets.UTF_8.decode(buf).toString();
                closeOne(trigger, arn, start, entry.value);
                done.add(entry.key);
            }
        }
        done.forEach(counts::delete);
        closedBefore = limit;
        clocks.put(WATERMARK, watermark.value());
    }

    private void closeOne(Record<String, Mark> trigger, String arn, long start, long x) {
        Baseline previous = baselines.get(arn);
        // As trailspike: a window already in the baseline is not applied again.
        if (previous != null && previous.lastWindowStartMs() >= start) {
            return;
        }
        Baseline updated = Baseline.update(previous, x, start);
        baselines.put(arn, updated);
        double threshold = updated.avg() + DEVIATION_THRESHOLD * updated.stdev();
        if (x > threshold && updated.n() > DATA_POINT_THRESHOLD) {
            String json = alert(arn, start, start + WIDTH_MS, x, updated, threshold);
            context.forward(new Record<>(arn, json, trigger.timestamp()));
        }
    }

    /**
     * Window start (sign bit flipped, so that unsigned byte order is
     * numeric order) then the ARN's UTF-8: RocksDB and the store cache
     * both iterate in that byte order.
     */
    static Bytes key(long windowStartMs, String arn) {
        byte[] name = arn.getBytes(StandardCharsets.UTF_8);
        return Bytes.wrap(ByteBuffer.allocate(8 + name.length)
                .putLong(windowStartMs ^ Long.MIN_VALUE).put(name).array());
    }

    private static String alert(String arn, long start, long end, long x, Baseline b, double threshold) {
        StringBuilder json = new StringBuilder(256);
        json.append("{\"user\":");
        quote(json, arn);
        json.append(",\"windowStart\":\"").append(Instant.ofEpochMilli(start)).append('"')
                .append(",\"windowEnd\":\"").append(Instant.ofEpochMilli(end)).append('"')
                .append(",\"numberOfApiCalls\":").append(x)
                .append(",\"avgApiCalls\":").append(b.avg())
                .append(",\"stdevApiCalls\":").append(b.stdev())
                .append(",\"numDataPoints\":").append(b.n())
                .append(",\"threshold\":").append(threshold)
                .append('}');
        return json.toString();
    }

    private static void quote(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        out.append('"');
    }
}
