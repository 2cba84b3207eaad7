package trailspike.peer;

import java.nio.ByteBuffer;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One ARN's baseline (SPEC.md section 3) and its fixed 32-byte encoding in
 * the state store.
 */
public record Baseline(long n, double avg, double stdev, long lastWindowStartMs) {
    /** S in d = min(n', S). */
    static final long SMOOTHING = 720;

    /**
     * The update of SPEC.md section 3, term for term as trailspike's
     * baseline::update, so that both give bit-identical doubles. A new ARN
     * is {@code previous == null}: n = 0, avg = 0, stdev = 0 and d = 1,
     * which gives avg = x, stdev = 0, n = 1.
     */
    static Baseline update(Baseline previous, long x, long windowStartMs) {
        long n = previous == null ? 0 : previous.n;
        double avg = previous == null ? 0.0 : previous.avg;
        double stdev = previous == null ? 0.0 : previous.stdev;
        long newPoints = n + 1;
        double d = newPoints <= 1 ? 1.0 : (double) Math.min(newPoints, SMOOTHING);
        double count = (double) x;
        double newAvg = avg + (count - avg) / d;
        double variance = (stdev * stdev * (d - 1.0) + (count - newAvg) * (count - avg)) / d;
        return new Baseline(newPoints, newAvg, Math.sqrt(Math.max(variance, 0.0)), windowStartMs);
    }

    static Serde<Baseline> serde() {
        Serializer<Baseline> ser = (topic, b) -> b == null ? null
                : ByteBuffer.allocate(32).putLong(b.n).putDouble(b.avg)
                        .putDouble(b.stdev).putLong(b.lastWindowStartMs).array();
        Deserializer<Baseline> de = (topic, bytes) -> {
            if (bytes == null) {
                return null;
            }
            ByteBuffer buf = ByteBuffer.wrap(bytes);
            return new Baseline(buf.getLong(), buf.getDouble(), buf.getDouble(), buf.getLong());
        };
        return Serdes.serdeFrom(ser, de);
    }
}
