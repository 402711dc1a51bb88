import pytest


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for every integration test (a few seconds to start)."""
    import ray

    from gmptl.runtime import bind_embedded_ray_to_loopback

    bind_embedded_ray_to_loopback()  # the tests turn token authentication off: loopback only, then
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024**2)
    yield ray
    ray.shutdown()
