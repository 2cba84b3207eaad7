package trailspike.peer;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;

/**
 * What the peer needs to stop itself once it has caught up: the highest
 * input offset processed per partition, and when any processor last saw a
 * record, and the input the peer could not use or found late. Shared by
 * every stream thread.
 */
public final class Activity {
    private final AtomicLong lastNanos = new AtomicLong(System.nanoTime());
    private final Map<Integer, Long> nextOffsets = new ConcurrentHashMap<>();
    private final AtomicLong mismatches = new AtomicLong();
    private final AtomicLong late = new AtomicLong();

    void touch() {
        lastNanos.lazySet(System.nanoTime());
    }

    void consumed(int partition, long offset) {
        nextOffsets.merge(partition, offset + 1, Math::max);
        touch();
    }

    /** A counted record whose key is not its ARN (by-key mode). */
    void mismatch() {
        mismatches.incrementAndGet();
    }

    long mismatches() {
        return mismatches.get();
    }

    /** A call whose window had already closed. */
    void late() {
        late.incrementAndGet();
    }

    long lateCalls() {
        return late.get();
    }

    long idleMillis() {
        return (System.nanoTime() - lastNanos.get()) / 1_000_000;
    }

    /** Whether every partition has been processed up to {@code ends}. */
    boolean reached(Map<Integer, Long> ends) {
        return ends.entrySet().stream()
                .allMatch(e -> e.getValue() == 0 || nextOffsets.getOrDefault(e.getKey(), 0L) >= e.getValue());
    }
}
