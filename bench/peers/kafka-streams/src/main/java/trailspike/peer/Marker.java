package trailspike.peer;

import java.time.Duration;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;

/**
 * Runs in the task of one input partition (the source) and turns its
 * records into {@link Mark}s: a CALL keyed by the ARN for every counted
 * call, and, keyed by {@link SpikePeer#TICK} so that they reach every
 * detecting task, a PROGRESS when the source's high-water mark moves the
 * watermark it allows into a new window, and an IDLE once the source has
 * had no message for {@link #IDLE_TIMEOUT} of wall-clock time.
 *
 * <p>PROGRESS only at those steps is enough: a window closes when the
 * watermark reaches its end, and window ends are multiples of the width,
 * so which windows are closed depends only on the window the watermark
 * lies in. It keeps the multicast to about one mark per source, detecting
 * task and hour of event time.
 */
final class Marker implements Processor<String, Event, String, Mark> {
    /** trailspike's default detection.idle_timeout. */
    static final Duration IDLE_TIMEOUT = Duration.ofSeconds(60);

    private final Activity activity;
    private final boolean checkKeys;
    private ProcessorContext<String, Mark> context;
    private int source;
    private long maxTimeMs = Watermark.NONE;
    /** Watermark window last announced; NONE forces the next announcement. */
    private long announcedWindow = Watermark.NONE;
    private long lastMessageMs;
    private boolean idle;

    /**
     * @param checkKeys whether the input is keyed by ARN (by-key mode),
     *                  so that a call under another key is a mismatch
     */
    Marker(Activity activity, boolean checkKeys) {
        this.activity = activity;
        this.checkKeys = checkKeys;
    }

    @Override
    public void init(ProcessorContext<String, Mark> context) {
        this.context = context;
        this.source = context.taskId().partition();
        this.lastMessageMs = context.currentSystemTimeMs();
        context.schedule(Duration.ofSeconds(1), PunctuationType.WALL_CLOCK_TIME, this::checkIdle);
    }

    @Override
    public void process(Record<String, Event> record) {
        context.recordMetadata().ifPresent(m -> activity.consumed(m.partition(), m.offset()));
        lastMessageMs = context.currentSystemTimeMs();
        Event e = record.value();
        long timeMs = e.timeMs();
        if (e.counts()) {
            if (checkKeys && !e.arn().equals(record.key())) {
                activity.mismatch();
            } else {
                context.forward(record.withKey(e.arn()).withValue(new Mark(Mark.Kind.CALL, source, timeMs)));
            }
        }
        maxTimeMs = Math.max(maxTimeMs, timeMs);
        long window = Math.floorDiv(maxTimeMs - SpikePeer.GRACE.toMillis(), SpikePeer.WINDOW.toMillis());
        // After an IDLE every detecting task must hear that the source is
        // back, whatever window it is in.
        if (idle || window > announcedWindow) {
            idle = false;
            announcedWindow = window;
            context.forward(record.withKey(SpikePeer.TICK)
                    .withValue(new Mark(Mark.Kind.PROGRESS, source, maxTimeMs)));
        }
    }

    private void checkIdle(long nowMs) {
        if (!idle && nowMs - lastMessageMs >= IDLE_TIMEOUT.toMillis()) {
            idle = true;
            long timestamp = maxTimeMs == Watermark.NONE ? nowMs : maxTimeMs;
            context.forward(new Record<>(SpikePeer.TICK, new Mark(Mark.Kind.IDLE, source, 0L), timestamp));
        }
    }
}
