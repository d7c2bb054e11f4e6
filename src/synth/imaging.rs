//! The synthetic chest X-ray world: ED stays and studies with every linking case of SPEC §3,
//! MIMIC-CXR-JPG tables and files, reports, REFLACX readings and EyeGaze tables with the
//! DICOM_ID defects of SPEC §4.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{Duration, NaiveDate, NaiveDateTime};

use super::spec::{write_file, DatasetRoots, Planted, Rng, ShortIds, Subject, SynthSpec, TableOut};

#[derive(Debug, Clone)]
pub(super) struct StayPlan {
    pub subject: u64,
    pub stay_id: u64,
    pub hadm_id: u64,
    pub intime: NaiveDateTime,
    pub outtime: NaiveDateTime,
}

#[derive(Debug, Clone)]
pub(super) struct StudyPlan {
    pub subject: u64,
    pub study_id: u64,
    pub dicoms: Vec<(String, &'static str)>,
    pub date: String,
    pub time: String,
    pub link_paper: Option<u64>,
    pub link_release: Option<u64>,
    pub link_window7: Option<u64>,
    pub in_cohort: bool,
    pub eye_gaze: bool,
    pub reflacx: bool,
}

#[derive(Debug, Default)]
pub(super) struct World {
    pub stays: Vec<StayPlan>,
    pub studies: Vec<StudyPlan>,
}

fn at(date: NaiveDate, h: u32, m: u32, s: u32) -> NaiveDateTime {
    date.and_hms_opt(h, m, s).unwrap_or_default()
}

/// Hands out stay, admission and study ids, and records the stays and studies it plans.
struct Planner<'a> {
    world: World,
    next_stay: u64,
    next_hadm: u64,
    next_study: u64,
    rng: &'a mut Rng,
}

impl Planner<'_> {
    fn stay(&mut self, s: &Subject, intime: NaiveDateTime, outtime: NaiveDateTime) -> u64 {
        self.next_stay += 1 + self.next_stay % 37;
        self.next_hadm += 1 + self.next_hadm % 41;
        let (stay_id, hadm_id) = (self.next_stay, self.next_hadm);
        self.world.stays.push(StayPlan { subject: s.id, stay_id, hadm_id, intime, outtime });
        stay_id
    }

    /// A study at `t` (its StudyTime written as `time_text`), and the stay each profile links
    /// it to: [paper, release, 7-day window].
    fn study(
        &mut self,
        s: &Subject,
        t: NaiveDateTime,
        time_text: &str,
        links: [Option<u64>; 3],
        views: &[&'static str],
    ) {
        self.next_study += 1 + self.rng.below(1000);
        let dicoms = views.iter().map(|v| (self.rng.dicom(), *v)).collect();
        self.world.studies.push(StudyPlan {
            subject: s.id,
            study_id: self.next_study,
            dicoms,
            date: t.format("%Y%m%d").to_string(),
            time: time_text.to_string(),
            link_paper: links[0],
            link_release: links[1],
            link_window7: links[2],
            in_cohort: s.in_cohort,
            eye_gaze: s.in_cohort && s.index % 3 != 0,
            reflacx: s.in_cohort && s.index % 3 != 1,
        });
    }

    /// The linking case of a cohort subject (its index mod 6), one study each.
    fn case(&mut self, s: &Subject, base: NaiveDate) {
        let views: &[&'static str] = if s.index % 3 == 0 { &["PA", "LATERAL"] } else { &["AP"] };
        match s.index % 6 {
            0 => {
                let a = self.stay(s, at(base, 12, 0, 0), at(base, 20, 0, 0));
                self.study(s, at(base, 14, 30, 15), "143015.25", [Some(a); 3], views);
            }
            1 => {
                // Exactly at intime: the strict rule fails; the window rule finds the stay.
                let a = self.stay(s, at(base, 12, 0, 0), at(base, 20, 0, 0));
                self.study(s, at(base, 12, 0, 0), "120000.0", [None, None, Some(a)], views);
            }
            2 => {
                // Inside two overlapping stays: never linked.
                self.stay(s, at(base, 12, 0, 0), at(base, 20, 0, 0));
                self.stay(s, at(base, 15, 0, 0), at(base + Duration::days(1), 2, 0, 0));
                self.study(s, at(base, 16, 0, 0), "160000.0", [None; 3], views);
            }
            3 => {
                // Before 10:00: links when padded (paper), never in release.
                let a = self.stay(s, at(base, 7, 0, 0), at(base, 11, 0, 0));
                self.study(s, at(base, 8, 5, 56), "80556.875", [Some(a), None, Some(a)], views);
            }
            4 => {
                // Three days after the stay: only within a 7-day window.
                let a = self.stay(s, at(base, 12, 0, 0), at(base, 20, 0, 0));
                self.study(s, at(base + Duration::days(3), 10, 30, 0), "103000.0", [None, None, Some(a)], views);
            }
            _ => {
                // No ED stay at all.
                self.study(s, at(base, 14, 0, 0), "140000.0", [None; 3], views);
            }
        }
    }
}

/// Plans stays and studies so that every linking case occurs (case = cohort index mod 6).
pub(super) fn plan_world(subjects: &[Subject], rng: &mut Rng) -> World {
    let mut p =
        Planner { world: World::default(), next_stay: 30_000_000, next_hadm: 20_000_000, next_study: 50_000_000, rng };
    let epoch = NaiveDate::from_ymd_opt(2150, 1, 1).unwrap_or_default();
    for s in subjects {
        let base = epoch + Duration::days(40 * s.index as i64 + if s.in_cohort { 0 } else { 20 });
        if !s.in_cohort {
            let a = p.stay(s, at(base, 12, 0, 0), at(base, 20, 0, 0));
            p.study(s, at(base, 13, 0, 0), "130000.0", [Some(a), Some(a), Some(a)], &["PA"]);
            continue;
        }
        p.case(s, base);
        if s.index % 2 == 0 {
            let day = base + Duration::days(20);
            let c = p.stay(s, at(day, 9, 30, 0), at(day, 18, 0, 0));
            p.study(s, at(day, 13, 20, 5), "132005.0", [Some(c); 3], &["PA"]);
        }
    }
    let mut w = p.world;
    plant_ambiguous_prefix(&mut w);
    w
}

/// Two EyeGaze images sharing a long prefix, so a short id matching both is ambiguous.
fn plant_ambiguous_prefix(w: &mut World) {
    let eg: Vec<(usize, usize)> = w
        .studies
        .iter()
        .enumerate()
        .filter(|(_, s)| s.eye_gaze)
        .flat_map(|(i, s)| (0..s.dicoms.len()).map(move |j| (i, j)))
        .collect();
    if eg.len() >= 6 {
        let (i, j) = eg[eg.len() - 1];
        let (k, l) = eg[eg.len() - 2];
        let prefix = w.studies[i].dicoms[j].0[..27].to_string();
        let tail = w.studies[k].dicoms[l].0[27..].to_string();
        w.studies[k].dicoms[l].0 = format!("{prefix}{tail}");
    }
}

const CXR_METADATA: &str = "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning";
const CHEXPERT: &str = "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices";
const REFLACX_V1: &str = "id,split,eye_tracking_data_discarded,image,dicom_id,subject_id,image_size_x,image_size_y,Airway wall thickening,Atelectasis,Consolidation,Emphysema,Enlarged cardiac silhouette,Fibrosis,Fracture,Groundglass opacity,Mass,Nodule,Other,Pleural effusion,Pleural thickening,Pneumothorax,Pulmonary edema,Quality issue,Support devices,Wide mediastinum";
const REFLACX_V2: &str = "id,split,eye_tracking_data_discarded,image,dicom_id,subject_id,image_size_x,image_size_y,Abnormal mediastinal contour,Acute fracture,Atelectasis,Consolidation,Enlarged cardiac silhouette,Enlarged hilum,Groundglass opacity,Hiatal hernia,High lung volume / emphysema,Interstitial lung disease,Lung nodule or mass,Other,Pleural abnormality,Pneumothorax,Pulmonary edema,Support devices";
const MASTER_SHEET: &str = "dicom_id,path,study_id,patient_id,stay_id,gender,anchor_age,image_top_pad,image_bottom_pad,image_left_pad,image_right_pad,dx1,dx1_icd,dx2,dx2_icd,dx3,dx3_icd,dx4,dx4_icd,dx5,dx5_icd,dx6,dx6_icd,dx7,dx7_icd,dx8,dx8_icd,dx9,dx9_icd,normal_reports,Normal,CHF,pneumonia,consolidation,enlarged_cardiac_silhouette,linear__patchy_atelectasis,lobar__segmental_collapse,not_otherwise_specified_opacity___pleural__parenchymal_opacity__,pleural_effusion_or_thickening,pulmonary_edema__hazy_opacity,normal_anatomically,elevated_hemidiaphragm,hyperaeration,vascular_redistribution,atelectasis__chx,cardiomegaly__chx,consolidation__chx,edema__chx,enlarged_cardiomediastinum__chx,fracture__chx,lung_lesion__chx,lung_opacity__chx,no_finding__chx,pleural_effusion__chx,pleural_other__chx,pneumonia__chx,pneumothorax__chx,support_devices__chx,cxr_exam_indication";
const GAZE: &str = "SESSION_ID,MEDIA_ID,DICOM_ID,CNT,Time (in secs),TIMETICK(f=10000000),FPOGX,FPOGY,FPOGS,FPOGD,FPOGID,FPOGV,BPOGX,BPOGY,BPOGV,LPCX,LPCY,LPD,LPS,LPV,RPCX,RPCY,RPD,RPS,RPV,BKID,BKDUR,BKPMIN,LPMM,LPMMV,RPMM,RPMMV,SACCADE_MAG,SACCADE_DIR,VID_FRAME,X_ORIGINAL,Y_ORIGINAL";
const REFLACX_FIX: &str = "timestamp_start_fixation,timestamp_end_fixation,x_position,y_position,pupil_area_normalized,angular_resolution_x_pixels_per_degree,angular_resolution_y_pixels_per_degree,window_width,window_level,xmin_shown_from_image,ymin_shown_from_image,xmax_shown_from_image,ymax_shown_from_image,xmin_in_screen_coordinates,ymin_in_screen_coordinates,xmax_in_screen_coordinates,ymax_in_screen_coordinates";
const REFLACX_GAZE: &str = "timestamp_sample,x_position,y_position,pupil_area_normalized,angular_resolution_x_pixels_per_degree,angular_resolution_y_pixels_per_degree,window_width,window_level,xmin_shown_from_image,ymin_shown_from_image,xmax_shown_from_image,ymax_shown_from_image,xmin_in_screen_coordinates,ymin_in_screen_coordinates,xmax_in_screen_coordinates,ymax_in_screen_coordinates";
pub(super) const INDEX_HTML: &[u8] =
    b"<html><head><title>Index of /</title></head><body>wget mirror listing</body></html>\n";

fn subject_dir(subject: u64) -> String {
    let s = subject.to_string();
    format!("p{}/p{s}", &s[..2])
}

/// Writes MIMIC-CXR-JPG, MIMIC-CXR reports, REFLACX and EyeGaze; returns what was planted.
pub(super) fn write_imaging(
    roots: &DatasetRoots,
    _subjects: &[Subject],
    w: &World,
    spec: &SynthSpec,
    rng: &mut Rng,
) -> anyhow::Result<Planted> {
    let mut planted = Planted::default();
    let gz = spec.gzip;
    let jpg = roots.mimic_cxr_jpg.clone();
    let mut meta = TableOut::mimic(&jpg, "mimic-cxr-2.0.0-metadata", CXR_METADATA, gz)?;
    let mut chexpert = TableOut::mimic(&jpg, "mimic-cxr-2.0.0-chexpert", CHEXPERT, gz)?;
    let mut negbio = TableOut::mimic(&jpg, "mimic-cxr-2.0.0-negbio", CHEXPERT, gz)?;
    let mut split = TableOut::mimic(&jpg, "mimic-cxr-2.0.0-split", "dicom_id,study_id,subject_id,split", gz)?;
    let labels = ["", "1.0", "0.0", "-1.0"];
    for st in &w.studies {
        for (dicom, view) in &st.dicoms {
            let (desc, code, orient) = match *view {
                "AP" => ("CHEST (PORTABLE AP)", "antero-posterior", ""),
                "LATERAL" => ("CHEST (PA AND LAT)", "lateral", "Erect"),
                _ => ("CHEST (PA AND LAT)", "postero-anterior", "Erect"),
            };
            meta.line(&format!(
                "{dicom},{},{},{desc},{view},3056,2544,{},{},{desc},{code},{orient}",
                st.subject, st.study_id, st.date, st.time
            ))?;
            split.line(&format!(
                "{dicom},{},{},{}",
                st.study_id,
                st.subject,
                rng.pick(&["train", "validate", "test"])
            ))?;
        }
        for t in [&mut chexpert, &mut negbio] {
            let vals: Vec<&str> = (0..14).map(|_| *rng.pick(&labels)).collect();
            t.line(&format!("{},{},{}", st.subject, st.study_id, vals.join(",")))?;
        }
        if !st.in_cohort {
            continue;
        }
        planted.images += st.dicoms.len();
        planted.linked_images_paper += st.dicoms.len() * usize::from(st.link_paper.is_some());
        planted.linked_images_release += st.dicoms.len() * usize::from(st.link_release.is_some());
        planted.linked_images_window7 += st.dicoms.len() * usize::from(st.link_window7.is_some());
        let sdir = jpg.join("files").join(subject_dir(st.subject)).join(format!("s{}", st.study_id));
        for (dicom, _) in &st.dicoms {
            let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
            bytes.extend_from_slice(format!("fake jpeg {dicom}").as_bytes());
            bytes.extend_from_slice(&[0xFF, 0xD9]);
            write_file(&sdir.join(format!("{dicom}.jpg")), &bytes)?;
        }
        write_file(&sdir.join("index.html"), INDEX_HTML)?;
        let report = format!(
            "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___F with shortness of breath\n \n FINDINGS: \n \n The lungs are clear.  Study {}.\n \n IMPRESSION: \n \n No acute cardiopulmonary process.\n",
            st.study_id
        );
        write_file(
            &roots.mimic_cxr.join("files").join(subject_dir(st.subject)).join(format!("s{}.txt", st.study_id)),
            report.as_bytes(),
        )?;
    }
    for t in [meta, chexpert, negbio, split] {
        t.finish()?;
    }
    planted.stays_paper =
        w.studies.iter().filter(|s| s.in_cohort).filter_map(|s| s.link_paper).collect::<BTreeSet<_>>().len();
    let mut cohort: BTreeSet<u64> = w.studies.iter().filter(|s| s.in_cohort).map(|s| s.subject).collect();
    write_reflacx(&roots.reflacx, w, rng, &mut planted)?;
    write_eye_gaze(&roots.egd_cxr, w, rng, &mut planted)?;
    planted.patients = cohort.len();
    planted.cohort = std::mem::take(&mut cohort).into_iter().collect();
    Ok(planted)
}

fn write_reflacx(root: &Path, w: &World, rng: &mut Rng, planted: &mut Planted) -> anyhow::Result<()> {
    let main = root.join("main_data");
    let mut phases = [
        TableOut::create(&main.join("metadata_phase_1.csv"), REFLACX_V1, false)?.crlf(),
        TableOut::create(&main.join("metadata_phase_2.csv"), REFLACX_V2, false)?.crlf(),
        TableOut::create(&main.join("metadata_phase_3.csv"), REFLACX_V2, false)?.crlf(),
    ];
    write_file(&main.join("index.html"), INDEX_HTML)?;
    let images: Vec<(&StudyPlan, &String)> =
        w.studies.iter().filter(|s| s.reflacx).flat_map(|s| s.dicoms.iter().map(move |(d, _)| (s, d))).collect();
    let mut serial = 100_000u64;
    for (n, (study, dicom)) in images.iter().enumerate() {
        // The first image is read twice (two radiologists of phase 1).
        let readings = if n == 0 { vec![1, (n % 3) + 1] } else { vec![(n % 3) + 1] };
        for phase in readings {
            serial += 1 + rng.below(7);
            let id = if phase == 3 { format!("P300R{serial}") } else { format!("P{phase}{:02}R{serial}", n % 100) };
            let discarded = n == 3;
            let image = format!(
                "physionet.org/files/mimic-cxr/2.0.0/files/{}/s{}/{dicom}.dcm",
                subject_dir(study.subject),
                study.study_id
            );
            let v1 = phase == 1;
            let label_count = if v1 { 18 } else { 16 };
            let other_pos = if v1 { 10 } else { 11 };
            let mut labels: Vec<String> = (0..label_count).map(|_| rng.below(6).to_string()).collect();
            labels[other_pos] = if n % 4 == 0 { "\"scoliosis, mild\"".into() } else { String::new() };
            let last = labels.len() - 1;
            if v1 {
                labels[15] = rng.pick(&["True", "False"]).to_string(); // Quality issue
                labels[16] = rng.pick(&["True", "False"]).to_string(); // Support devices
            } else {
                labels[last] = rng.pick(&["True", "False"]).to_string();
            }
            phases[phase - 1].line(&format!(
                "{id},{},{},{image},{dicom},{},2544,3056,{}",
                rng.pick(&["train", "validate", "test"]),
                if discarded { "True" } else { "False" },
                study.subject,
                labels.join(",")
            ))?;
            planted.reflacx_readings += 1;
            write_reading(root, &id, v1, discarded, rng)?;
        }
    }
    // A hostile id: its metadata row is kept, its folder is never joined into a path.
    if let Some((study, dicom)) = images.first() {
        phases[2].line(&format!(
            "P300R000000/../../../escape,test,False,x,{dicom},{},2544,3056,{}",
            study.subject,
            vec!["0"; 16].join(",")
        ))?;
        planted.reflacx_readings += 1;
        planted.reflacx_bad_ids += 1;
    }
    for t in phases {
        t.finish()?;
    }
    Ok(())
}

fn write_reading(root: &Path, id: &str, v1: bool, discarded: bool, rng: &mut Rng) -> anyhow::Result<()> {
    let dir = root.join("main_data").join(id);
    let labels = if v1 {
        &REFLACX_V1[REFLACX_V1.find("Airway").unwrap_or(0)..]
    } else {
        &REFLACX_V2[REFLACX_V2.find("Abnormal").unwrap_or(0)..]
    };
    let label_list: Vec<&str> =
        labels.split(',').filter(|l| !matches!(*l, "Other" | "Quality issue" | "Support devices")).collect();
    let mut ell = TableOut::create(
        &dir.join("anomaly_location_ellipses.csv"),
        &format!("xmin,ymin,xmax,ymax,certainty,{}", label_list.join(",")),
        false,
    )?
    .crlf();
    for _ in 0..(1 + rng.below(2)) {
        let flags: Vec<&str> = label_list.iter().map(|_| if rng.below(4) == 0 { "True" } else { "False" }).collect();
        let x = 200 + rng.below(1000);
        let y = 300 + rng.below(1000);
        ell.line(&format!("{x},{y},{},{},{},{}", x + 500, y + 600, 1 + rng.below(5), flags.join(",")))?;
    }
    ell.finish()?;
    let mut bbox = TableOut::create(&dir.join("chest_bounding_box.csv"), "xmin,ymin,xmax,ymax", false)?.crlf();
    bbox.line("212,301,2398,2731")?;
    bbox.finish()?;
    write_file(&dir.join("index.html"), INDEX_HTML)?;
    let gaze_dir = root.join("gaze_data").join(id);
    std::fs::create_dir_all(&gaze_dir)?;
    if discarded {
        return Ok(());
    }
    let mut fix = TableOut::create(&dir.join("fixations.csv"), REFLACX_FIX, false)?.crlf();
    for k in 0..5 {
        fix.line(&format!(
            "{:.3},{:.3},{},{},0.963,54,54,0.81412,0.42155,0,0,2544,3056,660,0,2459,2160",
            k as f64 * 0.3,
            k as f64 * 0.3 + 0.25,
            1000 + rng.below(500),
            1500 + rng.below(500)
        ))?;
    }
    fix.finish()?;
    let mut ts = TableOut::create(
        &dir.join("timestamps_transcription.csv"),
        "word,timestamp_start_word,timestamp_end_word",
        false,
    )?
    .crlf();
    for (k, word) in ["the", "lungs", "are", "clear", "."].iter().enumerate() {
        ts.line(&format!("{word},{:.3},{:.3}", 1.2 + k as f64 * 0.3, 1.4 + k as f64 * 0.3))?;
    }
    ts.finish()?;
    write_file(&dir.join("transcription.txt"), b"the lungs are clear .")?;
    let mut gaze = TableOut::create(&gaze_dir.join("gaze.csv"), REFLACX_GAZE, false)?.crlf();
    for k in 0..20 {
        if k == 7 {
            gaze.line(&format!("{:.3},,,,,,0.81412,0.42155,0,0,2544,3056,660,0,2459,2160", k as f64 * 0.001))?;
        } else {
            gaze.line(&format!(
                "{:.3},{},{},0.958,54,54,0.81412,0.42155,0,0,2544,3056,660,0,2459,2160",
                k as f64 * 0.001,
                1200 + rng.below(100),
                1500 + rng.below(100)
            ))?;
        }
    }
    gaze.finish()?;
    Ok(())
}

fn gaze_row(rng: &mut Rng, session: u64, dicom: &str, cnt: u64) -> String {
    format!(
        "{session},0,{dicom},{cnt},{:.5},{}.0,0.45224,0.33879000000000004,0.01794,0.7056899999999999,{},1,0.46134,0.26619,1,0.37859,0.5943,18.33718,1.0527600000000001,1,0.6379,0.5979800000000001,18.19434,1.0606799999999998,1,0,0.0,20,3.5064800000000003,1,3.56681,1,0.0,0.0,0.0,{},{}",
        cnt as f64 * 0.0163,
        696_216_388_878u64 + cnt * 163_000,
        cnt / 4,
        998 + rng.below(200),
        1035 + rng.below(200)
    )
}

fn write_eye_gaze(root: &Path, w: &World, rng: &mut Rng, planted: &mut Planted) -> anyhow::Result<()> {
    let images: Vec<(&StudyPlan, &String)> =
        w.studies.iter().filter(|s| s.eye_gaze).flat_map(|s| s.dicoms.iter().map(move |(d, _)| (s, d))).collect();
    let mut sheet = TableOut::create(&root.join("master_sheet.csv"), MASTER_SHEET, false)?;
    let flags = vec!["0"; 14].join(",");
    let chx = vec![""; 14].join(",");
    let no_dx = vec![""; 16].join(",");
    for (study, dicom) in &images {
        let stale = 39_000_000 + rng.below(999_999);
        sheet.line(&format!(
            "{dicom},files/{}/s{}/{dicom}.dcm,{},{},{stale},{},{},0,0,534,534,\"Heart failure, unspecified\",I50.9,{no_dx},1,{flags},{chx},___F with CHF and SOB",
            subject_dir(study.subject), study.study_id, study.study_id, study.subject,
            rng.pick(&["F", "M"]), rng.pick(&["40 - 50", "50 - 60", "60 - 70"])
        ))?;
        let t = root.join("audio_segmentation_transcripts").join(dicom.as_str());
        write_file(&t.join("transcript.json"), b"{\n  \"full_text\": \"The lungs are clear. \",\n  \"time_stamped_text\": [\n    {\n      \"begin_time\": 0.6,\n      \"end_time\": 1.4,\n      \"phrase\": \"The lungs are clear.\"\n    }\n  ]\n}")?;
        write_file(&t.join("audio.wav"), b"RIFF\x24\0\0\0WAVEfmt ")?;
        for mask in ["left_lung.png", "right_lung.png", "mediastanum.png", "aortic_knob.png"] {
            write_file(&t.join(mask), b"\x89PNG\r\n\x1a\nfake")?;
        }
        write_file(&t.join("index.html"), INDEX_HTML)?;
    }
    sheet.finish()?;
    write_file(&root.join("index.html"), INDEX_HTML)?;
    let mut bbox = TableOut::create(&root.join("bounding_boxes.csv"), "dicom_id,bbox_name,x1,x2,y1,y2", false)?;
    for (_, dicom) in &images {
        for name in ["cardiac silhouette", "left clavicle", "right lung"] {
            bbox.line(&format!(
                "{dicom},{name},{}.0,{}.0,{}.0,{}.0",
                1000 + rng.below(9),
                1700 + rng.below(9),
                1200 + rng.below(9),
                2000 + rng.below(9)
            ))?;
        }
    }
    bbox.finish()?;
    planted.eye_gaze_short_ids = write_gaze_tables(root, &images, rng)?;
    Ok(())
}

/// eye_gaze and fixations: the same planted short-id cases, more rows in eye_gaze.
fn write_gaze_tables(root: &Path, images: &[(&StudyPlan, &String)], rng: &mut Rng) -> anyhow::Result<ShortIds> {
    let mut short = ShortIds::default();
    for (name, per_image) in [("eye_gaze", 12u64), ("fixations", 4u64)] {
        let mut t = TableOut::create(&root.join(format!("{name}.csv")), GAZE, false)?;
        let count = |c: &mut usize, n: u64| {
            if name == "eye_gaze" {
                *c += n as usize;
            }
        };
        for (k, (_, dicom)) in images.iter().enumerate() {
            let session = 1 + k as u64 / 30;
            // Image 1 appears only under a cut-short id with one candidate: replaced.
            let id: String = if k == 1 { dicom[..30].to_string() } else { dicom.to_string() };
            if k == 1 {
                count(&mut short.replaced_rows, per_image);
                short.replaced_id = dicom.to_string();
            }
            if k == 0 {
                for c in 0..3 {
                    t.line(&gaze_row(rng, session, &format!("{dicom}_calibration"), c))?;
                }
                count(&mut short.calibration_rows, 3);
            }
            for c in 0..per_image {
                t.line(&gaze_row(rng, session, &id, c))?;
            }
            if k == 0 {
                // A cut-short copy of an id that is also present: dropped.
                for c in 0..2 {
                    t.line(&gaze_row(rng, session, &dicom[..20], per_image + c))?;
                }
                count(&mut short.dropped_rows, 2);
            }
        }
        // No candidate at all, and a prefix shared by two images: rejected.
        t.line(&gaze_row(rng, 99, "0badc0de-0000", 0))?;
        count(&mut short.no_candidate_rows, 1);
        if let Some((_, last)) = images.last() {
            t.line(&gaze_row(rng, 99, &last[..27], 0))?;
            t.line(&gaze_row(rng, 99, &last[..27], 1))?;
            count(&mut short.ambiguous_rows, 2);
        }
        t.finish()?;
    }
    Ok(short)
}
