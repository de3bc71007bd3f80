//! The operator's Event recorder against a real API server: a repeat of an event on the same
//! object patches the first Event's series instead of creating another, and the recorder
//! remembers only as many events as it is given room for (one pushed out starts a new Event).

use anyhow::{Context as _, ensure};
use cellstack_operator::recorder::Recorder;
use cellstack_testkit::cluster::TestNamespace;
use k8s_openapi::api::{
    core::v1::{ConfigMap, ObjectReference},
    events::v1::Event as K8sEvent,
};
use kube::{
    Api, Resource as _,
    api::{ListParams, ObjectMeta, PostParams},
    runtime::events::{Event, EventType, Reporter},
};

/// The Events about `object` in the test namespace, oldest first: (series count, note).
async fn events_about(
    events: &Api<K8sEvent>,
    object: &str,
) -> anyhow::Result<Vec<(Option<i32>, Option<String>)>> {
    let mut about: Vec<K8sEvent> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
        .collect();
    about.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    Ok(about
        .into_iter()
        .map(|e| (e.series.map(|s| s.count), e.note))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_joins_the_series_and_an_event_pushed_out_of_the_cache_starts_a_new_one()
-> anyhow::Result<()> {
    let client = cellstack_testkit::client().await?;
    let ns = TestNamespace::create(&client, "events").await?;
    let result = async {
        let configmaps: Api<ConfigMap> = ns.api();
        let mut objects: Vec<ObjectReference> = Vec::new();
        for name in ["a", "b", "c"] {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            };
            let cm = configmaps.create(&PostParams::default(), &cm).await?;
            objects.push(cm.object_ref(&()));
        }
        let recorder = Recorder::with_capacity(
            client.clone(),
            Reporter {
                controller: "cellstack-test".into(),
                instance: Some("events-test".into()),
            },
            2,
        );
        let event = |note: &str| Event {
            type_: EventType::Normal,
            reason: "Tested".into(),
            note: Some(note.to_owned()),
            action: "Test".into(),
            secondary: None,
        };
        let events: Api<K8sEvent> = ns.api();

        recorder.publish(&event("first"), &objects[0]).await?;
        recorder.publish(&event("again"), &objects[0]).await?;
        let about_a = events_about(&events, "a").await?;
        ensure!(
            about_a == [(Some(2), Some("first".to_owned()))],
            "a repeat should patch the first Event's series to 2, found {about_a:?}"
        );

        // Two more objects' events fill the room for two: a's is pushed out.
        recorder.publish(&event("b"), &objects[1]).await?;
        recorder.publish(&event("c"), &objects[2]).await?;
        recorder.publish(&event("after"), &objects[0]).await?;
        let about_a = events_about(&events, "a").await?;
        ensure!(
            about_a
                == [
                    (Some(2), Some("first".to_owned())),
                    (None, Some("after".to_owned()))
                ],
            "an event pushed out of the cache should start a new Event, found {about_a:?}"
        );
        let about_c = events_about(&events, "c").await?;
        ensure!(
            about_c == [(None, Some("c".to_owned()))],
            "c's event was published once: {about_c:?}"
        );
        // c is still remembered: its repeat joins its series.
        recorder.publish(&event("c again"), &objects[2]).await?;
        let about_c = events_about(&events, "c").await?;
        ensure!(
            about_c == [(Some(2), Some("c".to_owned()))],
            "c's repeat should patch its series: {about_c:?}"
        );
        Ok(())
    }
    .await
    .context("the recorder against the API server");
    ns.finish(result).await
}
