package trailspike.peer;

import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.streams.processor.TimestampExtractor;

/**
 * Event time is the record's eventTime. The value is already an
 * {@link Event} here (Kafka Streams deserializes before extracting), so the
 * JSON is parsed once. A record that did not parse gets -1, which Kafka
 * Streams drops with a warning.
 */
public final class EventTimeExtractor implements TimestampExtractor {
    @Override
    public long extract(ConsumerRecord<Object, Object> record, long partitionTime) {
        return record.value() instanceof Event e ? e.timeMs() : -1L;
    }
}
