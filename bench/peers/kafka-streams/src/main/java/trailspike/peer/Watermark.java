package trailspike.peer;

import java.util.HashMap;
import java.util.Map;

/**
 * trailspike's watermark (SPEC.md section 2, trailspike's window.rs) as
 * one detecting task sees it: the lowest high-water mark over the sources
 * that are not idle, minus the allowed lateness, never moving backwards.
 * Until every expected source has been heard from, an unheard one holds
 * the watermark back, as a partition that has delivered nothing does in
 * trailspike. When every source is idle, the most advanced one sets it.
 *
 * <p>Idleness is wall-clock and decided upstream (by {@link Marker}, which
 * sees its partition's messages); here it is only a flag per source.
 */
final class Watermark {
    /** No event time yet. */
    static final long NONE = Long.MIN_VALUE;

    private final int expectedSources;
    private final long latenessMs;
    private final Map<Integer, Source> sources = new HashMap<>();
    private long value = NONE;

    private static final class Source {
        long maxTimeMs = NONE;
        boolean idle;
    }

    Watermark(int expectedSources, long latenessMs) {
        this.expectedSources = expectedSources;
        this.latenessMs = latenessMs;
    }

    long value() {
        return value;
    }

    /** The highest event time {@code source} is known to have reached. */
    long maxTimeMs(int source) {
        Source s = sources.get(source);
        return s == null ? NONE : s.maxTimeMs;
    }

    /** State saved by an earlier run of this task. */
    void restore(int source, long maxTimeMs) {
        sources.computeIfAbsent(source, k -> new Source()).maxTimeMs = maxTimeMs;
    }

    void restoreValue(long watermark) {
        value = Math.max(value, watermark);
    }

    /** {@code source} delivered a record of event time {@code timeMs}. */
    void observe(int source, long timeMs) {
        Source s = sources.computeIfAbsent(source, k -> new Source());
        boolean changed = s.idle || timeMs > s.maxTimeMs;
        s.idle = false;
        s.maxTimeMs = Math.max(s.maxTimeMs, timeMs);
        if (changed) {
            advance();
        }
    }

    void idle(int source) {
        sources.computeIfAbsent(source, k -> new Source()).idle = true;
        advance();
    }

    private void advance() {
        long candidate = candidate();
        if (candidate != NONE) {
            value = Math.max(value, candidate - latenessMs);
        }
    }

    private long candidate() {
        // A source not heard from yet is active and has delivered nothing.
        if (sources.size() < expectedSources) {
            return NONE;
        }
        long lowestActive = Long.MAX_VALUE;
        long highest = NONE;
        boolean anyActive = false;
        for (Source s : sources.values()) {
            highest = Math.max(highest, s.maxTimeMs);
            if (!s.idle) {
                if (s.maxTimeMs == NONE) {
                    return NONE;
                }
                anyActive = true;
                lowestActive = Math.min(lowestActive, s.maxTimeMs);
            }
        }
        return anyActive ? lowestActive : highest;
    }
}
