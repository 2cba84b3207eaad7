package trailspike.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import java.time.OffsetDateTime;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;
import org.apache.kafka.common.serialization.Deserializer;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One CloudTrail record (one JSON object per message) to an {@link Event}
 * with Jackson's streaming parser: the four fields are read, every other
 * value is skipped without being built. A message that is not a JSON
 * object with a parseable eventTime gives {@code null}, which
 * {@link EventTimeExtractor} turns into a dropped record (trailspike would
 * dead-letter it; the benchmark data has none).
 */
public final class EventDeserializer implements Deserializer<Event> {
    private static final Logger LOG = LoggerFactory.getLogger(EventDeserializer.class);
    private static final JsonFactory JSON = new JsonFactory();

    @Override
    public Event deserialize(String topic, byte[] data) {
        if (data == null) {
            return null;
        }
        try (JsonParser p = JSON.createParser(data)) {
            return parse(p);
        } catch (IOException | DateTimeParseException e) {
            LOG.warn("bad record on {}: {}", topic, e.getMessage());
            return null;
        }
    }

    private static Event parse(JsonParser p) throws IOException {
        if (p.nextToken() != JsonToken.START_OBJECT) {
            return null;
        }
        String time = null, type = null, name = null, arn = null;
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            String field = p.currentName();
            JsonToken value = p.nextToken();
            switch (field) {
                case "eventTime" -> time = text(p, value);
                case "eventType" -> type = text(p, value);
                case "eventName" -> name = text(p, value);
                case "userIdentity" -> arn = arnOf(p, value);
                default -> p.skipChildren();
            }
        }
        if (time == null) {
            return null;
        }
        boolean counts = "AwsApiCall".equals(type) && arn != null && !arn.isEmpty();
        return new Event(epochMillis(time), counts ? arn : null, name);
    }

    private static String text(JsonParser p, JsonToken value) throws IOException {
        if (value == JsonToken.VALUE_STRING) {
            return p.getText();
        }
        p.skipChildren();
        return null;
    }

    private static String arnOf(JsonParser p, JsonToken value) throws IOException {
        if (value != JsonToken.START_OBJECT) {
            p.skipChildren();
            return null;
        }
        String arn = null;
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            String field = p.currentName();
            JsonToken inner = p.nextToken();
            if (field.equals("arn")) {
                arn = text(p, inner);
            } else {
                p.skipChildren();
            }
        }
        return arn;
    }

    /**
     * CloudTrail writes {@code 2024-05-01T13:07:42Z}; that shape is read by
     * hand (java.time's formatter would dominate the parse), anything else
     * RFC 3339 goes through java.time. Fractions are dropped, as trailspike
     * does.
     */
    static long epochMillis(String t) {
        if (t.length() == 20 && t.charAt(4) == '-' && t.charAt(7) == '-'
                && t.charAt(10) == 'T' && t.charAt(13) == ':' && t.charAt(16) == ':'
                && t.charAt(19) == 'Z') {
            int year = digits(t, 0, 4), month = digits(t, 5, 2), day = digits(t, 8, 2);
            int hour = digits(t, 11, 2), minute = digits(t, 14, 2), second = digits(t, 17, 2);
            if (month >= 1 && month <= 12 && day >= 1 && day <= daysInMonth(year, month)
                    && hour < 24 && minute < 60 && second < 60) {
                long days = daysFromCivil(year, month, day);
                return ((days * 24 + hour) * 60 + minute) * 60_000L + second * 1000L;
            }
        }
        return OffsetDateTime.parse(t, DateTimeFormatter.ISO_OFFSET_DATE_TIME)
                .toEpochSecond() * 1000L;
    }

    private static int digits(String t, int from, int count) {
        int v = 0;
        for (int i = from; i < from + count; i++) {
            char c = t.charAt(i);
            if (c < '0' || c > '9') {
                throw new DateTimeParseException("not a digit", t, i);
            }
            v = v * 10 + (c - '0');
        }
        return v;
    }

    private static int daysInMonth(int year, int month) {
        if (month == 2) {
            boolean leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            return leap ? 29 : 28;
        }
        return month == 4 || month == 6 || month == 9 || month == 11 ? 30 : 31;
    }

    /** Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
    private static long daysFromCivil(int y, int m, int d) {
        y -= m <= 2 ? 1 : 0;
        long era = Math.floorDiv(y, 400);
        long yoe = y - era * 400;
        long doy = (153L * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        return era * 146097 + doe - 719468;
    }
}
