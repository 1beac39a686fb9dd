//! The scoring web page in a real browser (headless Chromium through
//! chromedriver), against the real pipeline: a person fills the form,
//! submits, sees the toast, and finds the new rating on the results page
//! (the page kept the submission's results token), again later, but not
//! another number's; an invalid phone number is pointed out in the form and
//! nothing is sent to the log.

use std::time::Duration;

use fantoccini::{Client, Locator};
use pipeline_tests::browser::{ChromeDriver, save_screenshot};
use pipeline_tests::{
    RunningApi, RunningProjector, TestDatabase, TestTopic, api_config_with_results, unique_group,
};
use serde_json::{Value, json};

/// How long the page gets for anything it should do.
const PATIENCE: Duration = Duration::from_secs(20);

async fn fill(browser: &Client, phone: &str, grades: [u32; 3], comments: [&str; 3]) {
    browser
        .find(Locator::Id("acc_nbr"))
        .await
        .expect("the phone field")
        .send_keys(phone)
        .await
        .expect("typing the phone number");
    for (index, grade) in grades.into_iter().enumerate() {
        // The radio buttons are hidden behind their labels, as on a phone.
        let selector = format!(
            ".picker[data-name=\"grade{}\"] input[value=\"{grade}\"]",
            index + 1
        );
        let input = browser
            .find(Locator::Css(&selector))
            .await
            .expect("a grade button");
        let label = input.find(Locator::XPath("..")).await.expect("its label");
        label.click().await.expect("picking a grade");
    }
    for (index, comment) in comments.into_iter().enumerate() {
        browser
            .find(Locator::Id(&format!("txt{}", index + 1)))
            .await
            .expect("a comment box")
            .send_keys(comment)
            .await
            .expect("typing a comment");
    }
}

/// Presses the form's submit button.
async fn submit(browser: &Client) {
    browser
        .find(Locator::Id("submit"))
        .await
        .expect("the submit button")
        .click()
        .await
        .expect("submitting");
}

/// Waits until the element `id` is shown and its text is `text`.
async fn await_text(browser: &Client, id: &str, text: &str) {
    let script = "const e = document.getElementById(arguments[0]); \
                  return e !== null && !e.hidden && e.textContent === arguments[1];";
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let shown = browser
            .execute(script, vec![json!(id), json!(text)])
            .await
            .expect("running a script");
        if shown == json!(true) {
            return;
        }
        let actual = browser
            .execute(
                "const e = document.getElementById(arguments[0]); return e && [e.hidden, e.textContent];",
                vec![json!(id)],
            )
            .await
            .expect("running a script");
        assert!(
            tokio::time::Instant::now() < deadline,
            "#{id} did not show {text:?} within {PATIENCE:?}; it is {actual} (hidden, text)"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the browser is on a page at `path`.
async fn await_path(browser: &Client, path: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let current = browser.current_url().await.expect("a URL");
        if current.path() == path {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the browser is still at {current}, not {path}, after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_person_rates_sees_the_toast_and_finds_the_rating_on_the_results_page() {
    let topic = TestTopic::create(3).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start_with(api_config_with_results(&topic.kafka, &database)).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());
    let driver = ChromeDriver::start();
    let browser = driver.session().await;
    let phone = "13800138000";

    // An earlier rating of the same number, so the page has history to show.
    let earlier = reqwest::Client::new()
        .post(api.url("/v1/scores"))
        .json(
            &json!({"acc_nbr": phone, "grade1": 4, "grade2": 3, "grade3": 4,
                      "txt1": "上次等了很久", "txt2": "", "txt3": "環境不錯"}),
        )
        .send()
        .await
        .expect("the API answers");
    assert_eq!(earlier.status(), 202);

    browser.goto(&api.url("/")).await.expect("opening the page");
    assert_eq!(
        browser.title().await.expect("a title"),
        "服務評分",
        "the scoring page"
    );
    fill(
        &browser,
        phone,
        [5, 4, 5],
        ["服務很好，謝謝！", "", "下次還會再來"],
    )
    .await;
    save_screenshot(&browser, "scoring-page.png").await;

    submit(&browser).await;
    await_text(&browser, "toast", "數據提交成功").await;

    // The page sent an Idempotency-Key: the event's id is the one derived
    // from a key (UUID version 5), not a fresh one (version 7).
    let page_events: Vec<Value> = topic
        .payloads()
        .await
        .iter()
        .map(|payload| serde_json::from_slice(payload).expect("an event"))
        .filter(|event: &Value| event["channel"] == "legacy_form")
        .collect();
    assert_eq!(page_events.len(), 1, "{page_events:?}");
    let event_id =
        uuid::Uuid::parse_str(page_events[0]["event_id"].as_str().expect("an id")).expect("a UUID");
    assert_eq!(
        event_id.get_version_num(),
        5,
        "the page's submission carried an Idempotency-Key"
    );

    // The page moves on to the results by itself, with the consistency
    // token: the new rating is there on the first load.
    await_path(&browser, "/results").await;
    let current = browser.current_url().await.expect("a URL");
    let query: Vec<(String, String)> = current.query_pairs().into_owned().collect();
    assert!(
        query
            .iter()
            .any(|(name, value)| name == "phoneNum" && value == phone),
        "{current}"
    );
    assert!(
        query
            .iter()
            .any(|(name, value)| name == "after" && !value.is_empty()),
        "the consistency token is passed on: {current}"
    );
    await_text(&browser, "submissions", "2").await;
    await_text(&browser, "avg1", "4.5").await;
    let rows = browser
        .find_all(Locator::Css("#scores li"))
        .await
        .expect("the rows");
    assert_eq!(rows.len(), 2);
    let newest = rows[0].text().await.expect("the newest row's text");
    assert!(newest.contains("評分 5 / 4 / 5"), "{newest}");
    assert!(newest.contains("服務很好，謝謝！"), "{newest}");
    assert!(newest.contains("下次還會再來"), "{newest}");
    for (id, why) in [
        ("notice", "no stale warning"),
        ("more", "no further page to load"),
        ("empty", "not the no-ratings line"),
    ] {
        let element = browser.find(Locator::Id(id)).await.expect(id);
        assert!(
            !element.is_displayed().await.expect("visibility"),
            "#{id} is shown ({why}): {}",
            element.text().await.unwrap_or_default()
        );
    }
    assert_eq!(
        browser
            .find(Locator::Id("account"))
            .await
            .expect("the account line")
            .text()
            .await
            .expect("its text"),
        "手機號碼 138****8000",
        "the number is shown masked"
    );
    save_screenshot(&browser, "results-page.png").await;

    // The token is kept for the number, never put in a URL.
    let kept = browser
        .execute(
            "return window.localStorage.getItem(arguments[0]);",
            vec![json!(format!("resultsToken:{phone}"))],
        )
        .await
        .expect("running a script");
    assert!(
        kept.as_str().is_some_and(|token| !token.is_empty()),
        "the results token is kept: {kept}"
    );
    assert!(
        !current.as_str().contains(kept.as_str().unwrap()),
        "the token is not in the URL: {current}"
    );

    // Later, without the consistency token: the kept token still reads.
    browser
        .goto(&api.url(&format!("/results?phoneNum={phone}")))
        .await
        .expect("opening the results page again");
    await_text(&browser, "submissions", "2").await;

    // Another number: no token for it here, and the server refuses without
    // saying whether it has ratings.
    let other = "13900139000";
    let other_rating = reqwest::Client::new()
        .post(api.url("/v1/scores"))
        .json(
            &json!({"acc_nbr": other, "grade1": 1, "grade2": 1, "grade3": 1, "txt1": "別人的評語"}),
        )
        .send()
        .await
        .expect("the API answers");
    assert_eq!(other_rating.status(), 202);
    browser
        .goto(&api.url(&format!("/results?phoneNum={other}")))
        .await
        .expect("opening another number's results");
    await_text(&browser, "notice", "請在評分後查看結果").await;
    let summary = browser.find(Locator::Id("summary")).await.expect("summary");
    assert!(
        !summary.is_displayed().await.expect("visibility"),
        "no results are shown for another number"
    );
    let page = browser.source().await.expect("the page's source");
    assert!(
        !page.contains("別人的評語"),
        "another number's comment shown"
    );

    browser.close().await.expect("closing the browser");
    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}

#[tokio::test]
async fn an_invalid_phone_number_is_pointed_out_and_nothing_is_sent_to_the_log() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start_with(api_config_with_results(&topic.kafka, &database)).await;
    let driver = ChromeDriver::start();
    let browser = driver.session().await;

    browser.goto(&api.url("/")).await.expect("opening the page");
    fill(&browser, "138-0013", [3, 3, 3], ["", "", ""]).await;
    submit(&browser).await;

    await_text(&browser, "acc_nbr-error", "請輸入有效的手機號碼").await;
    await_text(&browser, "toast", "數據提交失敗").await;
    let field = browser
        .find(Locator::Css("[data-field=\"acc_nbr\"]"))
        .await
        .expect("the phone field's container");
    assert_eq!(
        field.attr("class").await.expect("its class").as_deref(),
        Some("field invalid"),
        "the field is marked"
    );
    for grade in ["grade1", "grade2", "grade3"] {
        let error = browser
            .find(Locator::Id(&format!("{grade}-error")))
            .await
            .expect("a grade's error line");
        assert!(
            !error.is_displayed().await.expect("visibility"),
            "{grade} is valid and shows no error"
        );
    }
    assert_eq!(
        browser.current_url().await.expect("a URL").path(),
        "/",
        "the page stays"
    );
    assert_eq!(topic.record_count().await, 0, "nothing reached the log");

    browser.close().await.expect("closing the browser");
    api.stop().await;
    database.drop_database().await;
}
