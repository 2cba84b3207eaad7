package trailspike.peer;

import java.nio.ByteBuffer;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * What {@link Marker} tells {@link SpikeProcessor} about one input
 * partition (the source), and its fixed 13-byte encoding on the
 * repartition topic.
 *
 * <p>Event time has to travel with the data because Kafka Streams' own
 * stream time cannot stand in for trailspike's watermark after a
 * repartition: a downstream task's stream time is the highest timestamp
 * it has seen from any upstream task, while the watermark is the lowest of
 * the sources' high-water marks. The upstream tasks run at their own pace,
 * hours of event time apart, so stream time would close (and expire)
 * windows that slower sources are still filling.
 *
 * @param kind   what happened
 * @param source the input partition it happened on
 * @param timeMs event time of the call, or the source's high-water mark
 *               for {@link Kind#PROGRESS}; unused for {@link Kind#IDLE}
 */
public record Mark(Kind kind, int source, long timeMs) {
    enum Kind {
        /** One counted call, keyed by its ARN. */
        CALL,
        /** The source's highest event time has reached {@code timeMs}. */
        PROGRESS,
        /** The source has had no message for the idle timeout. */
        IDLE
    }

    private static final Kind[] KINDS = Kind.values();

    static Serde<Mark> serde() {
        Serializer<Mark> ser = (topic, m) -> m == null ? null
                : ByteBuffer.allocate(13).put((byte) m.kind.ordinal()).putInt(m.source)
                        .putLong(m.timeMs).array();
        Deserializer<Mark> de = (topic, bytes) -> {
            if (bytes == null) {
                return null;
            }
            ByteBuffer buf = ByteBuffer.wrap(bytes);
            return new Mark(KINDS[buf.get()], buf.getInt(), buf.getLong());
        };
        return Serdes.serdeFrom(ser, de);
    }
}
