package trailspike.peer;

import java.time.Instant;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * Receives each closed (ARN, window) count, in window-end order per ARN
 * (suppress emits a task's windows in time order), updates the ARN's
 * baseline in a persistent key-value store, and forwards an alert as JSON
 * keyed by the ARN when the window is a spike (SPEC.md section 4).
 */
public final class SpikeProcessor implements Processor<Windowed<String>, Long, String, String> {
    static final String STORE = "baselines";
    private static final double DEVIATION_THRESHOLD = 3.0;
    private static final long DATA_POINT_THRESHOLD = 15;

    private final Activity activity;
    private ProcessorContext<String, String> context;
    private KeyValueStore<String, Baseline> baselines;

    SpikeProcessor(Activity activity) {
        this.activity = activity;
    }

    @Override
    public void init(ProcessorContext<String, String> context) {
        this.context = context;
        this.baselines = context.getStateStore(STORE);
    }

    @Override
    public void process(Record<Windowed<String>, Long> record) {
        activity.touch();
        String arn = record.key().key();
        long start = record.key().window().start();
        long end = record.key().window().end();
        long x = record.value();
        Baseline previous = baselines.get(arn);
        // As trailspike: a window already in the baseline is not applied again.
        if (previous != null && previous.lastWindowStartMs() >= start) {
            return;
        }
        Baseline updated = Baseline.update(previous, x, start);
        baselines.put(arn, updated);
        double threshold = updated.avg() + DEVIATION_THRESHOLD * updated.stdev();
        if (x > threshold && updated.n() > DATA_POINT_THRESHOLD) {
            context.forward(record.withKey(arn).withValue(alert(arn, start, end, x, updated, threshold)));
        }
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
