package trailspike.peer;

/**
 * The CloudTrail fields the detection reads, already judged.
 *
 * @param timeMs    event time, epoch milliseconds (whole seconds, as in
 *                  trailspike)
 * @param arn       the ARN when the record counts, else {@code null}: a
 *                  record counts when eventType is AwsApiCall and
 *                  userIdentity.arn is a non-empty string (SPEC.md section 1)
 * @param eventName parsed as trailspike parses it; the peer does not build
 *                  uniqueApisCalled (see BENCHMARKS.md), so it is unused
 */
public record Event(long timeMs, String arn, String eventName) {
    public boolean counts() {
        return arn != null;
    }
}
