from appliance import metrics


def test_counters_keep_reflector_go_names():
    metrics.TCP_OUT_BYTES.inc(7)
    metrics.ERROR_TOTAL.labels(direction="upload", error_type="hash_mismatch").inc()
    text = metrics.render().decode()
    assert "# TYPE reflector_tcp_out_bytes counter" in text
    assert "reflector_tcp_out_bytes_total" not in text
    assert 'reflector_error_total{direction="upload",error_type="hash_mismatch"}' in text
    assert "_created" not in text
