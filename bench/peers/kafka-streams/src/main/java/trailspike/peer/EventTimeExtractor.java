package trailspike.peer;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.streams.processor.TimestampExtractor;

/**
 * Event time is the record's eventTime. The value is already an
 * {@link Event} here (Kafka Streams deserializes before extracting), so the
 * JSON is parsed once. A record that did not parse gets -1, which Kafka
 * Streams drops with a warning; so does one whose eventTime is more than
 * {@link #MAX_FUTURE_SKEW_S} ahead of its message timestamp, which
 * trailspike rejects as bad input (SPEC.md section 2) so that one corrupt
 * time cannot move the watermark past every open window.
 */
public final class EventTimeExtractor implements TimestampExtractor {
    /** trailspike's default detection.max_future_skew, in seconds. */
    static final long MAX_FUTURE_SKEW_S = 3600;

    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
        if (!(record.value() instanceof Event e)) {
            return -1L;
        }
        // As trailspike: whole seconds, and the wall clock for a message
        // without a timestamp.
        long arrivalMs = record.timestamp() >= 0 ? record.timestamp() : System.currentTimeMillis();
        long arrivalS = Math.floorDiv(arrivalMs, 1000L);
        if (Math.floorDiv(e.timeMs(), 1000L) > arrivalS + MAX_FUTURE_SKEW_S) {
            return -1L;
        }
        return e.timeMs();
    }
}
