//! Finding the embedding tensor of a classifier network: the input of its final classifier
//! layer. Works on a plain summary of the ONNX graph (op types and tensor names), so the rule is
//! unit-tested without a model file.
//!
//! The walk starts at the logits tensor and goes backwards through ops that only reshape
//! (Reshape, Flatten, Squeeze, Identity) until it meets the classifier: Gemm, MatMul (optionally
//! followed by a bias Add) or a 1x1 Conv (TF-slim exports use one). The classifier's non-constant
//! input is the embedding: for MobileNetV2 the 1280-d pooled feature vector.

use std::collections::{HashMap, HashSet};

/// One ONNX node, reduced to what the walk needs.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    pub op_type: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// For Conv: whether every kernel dimension is 1 (from the `kernel_shape` attribute).
    pub kernel_1x1: bool,
}

/// Why no embedding tensor could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutoEmbeddingError {
    #[error("tensor `{0}` is not produced by any node")]
    NoProducer(String),
    #[error(
        "tensor `{tensor}` comes from a `{op}` node (`{node}`), not from a classifier layer \
         (Gemm, MatMul[+Add] or 1x1 Conv)"
    )]
    NotAClassifier {
        tensor: String,
        op: String,
        node: String,
    },
    #[error("classifier node `{0}` has no non-constant input")]
    NoDataInput(String),
}

/// Ops that move data around without computing anything: the embedding is looked for before them.
const RESHAPING_OPS: [&str; 4] = ["Reshape", "Flatten", "Squeeze", "Identity"];

/// The embedding tensor for `logits`: the data input of the classifier layer that produces it.
/// `constants` names the initializers (and Constant outputs): weights, biases, shapes.
pub fn find_embedding_tensor(
    nodes: &[GraphNode],
    constants: &HashSet<String>,
    logits: &str,
) -> Result<String, AutoEmbeddingError> {
    let producer: HashMap<&str, &GraphNode> = nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let is_data = |t: &&String| !t.is_empty() && !constants.contains(t.as_str());
    let mut tensor = logits.to_string();
    // Bounded: a real graph reaches its classifier in a few steps; a cycle must not hang us.
    for _ in 0..nodes.len() + 1 {
        let node = producer
            .get(tensor.as_str())
            .ok_or_else(|| AutoEmbeddingError::NoProducer(tensor.clone()))?;
        let op = node.op_type.as_str();
        let data_input = || {
            node.inputs
                .iter()
                .find(is_data)
                .cloned()
                .ok_or_else(|| AutoEmbeddingError::NoDataInput(node.name.clone()))
        };
        if RESHAPING_OPS.contains(&op) {
            tensor = data_input()?;
        } else if op == "Gemm" || op == "MatMul" || (op == "Conv" && node.kernel_1x1) {
            return data_input();
        } else if op == "Add" {
            // A bias add: continue only into the MatMul it follows.
            let matmul_output = node.inputs.iter().filter(is_data).find(|t| {
                producer
                    .get(t.as_str())
                    .is_some_and(|p| p.op_type == "MatMul" || p.op_type == "Gemm")
            });
            match matmul_output {
                Some(t) => tensor = t.clone(),
                None => return Err(not_a_classifier(&tensor, node)),
            }
        } else {
            return Err(not_a_classifier(&tensor, node));
        }
    }
    Err(AutoEmbeddingError::NoProducer(tensor))
}

fn not_a_classifier(tensor: &str, node: &GraphNode) -> AutoEmbeddingError {
    AutoEmbeddingError::NotAClassifier {
        tensor: tensor.to_string(),
        op: node.op_type.clone(),
        node: node.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> GraphNode {
        GraphNode {
            op_type: op.into(),
            name: format!("{op}_{}", outputs[0]),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            kernel_1x1: false,
        }
    }

    fn consts(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn torchvision_style_gemm_after_flatten() {
        let nodes = [
            node("GlobalAveragePool", &["x"], &["pool"]),
            node("Flatten", &["pool"], &["flat"]),
            node("Gemm", &["flat", "W", "b"], &["output"]),
        ];
        let found = find_embedding_tensor(&nodes, &consts(&["W", "b"]), "output");
        assert_eq!(found, Ok("flat".to_string()));
    }

    #[test]
    fn keras_style_matmul_plus_bias() {
        let nodes = [
            node("ReduceMean", &["x"], &["pool"]),
            node("MatMul", &["pool", "W"], &["mm"]),
            node("Add", &["b", "mm"], &["logits"]),
        ];
        let found = find_embedding_tensor(&nodes, &consts(&["W", "b"]), "logits");
        assert_eq!(found, Ok("pool".to_string()));
    }

    #[test]
    fn tf_slim_1x1_conv_then_squeeze() {
        let mut conv = node("Conv", &["pool4d", "W", "b"], &["conv"]);
        conv.kernel_1x1 = true;
        let nodes = [
            node("AveragePool", &["x"], &["pool4d"]),
            conv,
            node("Reshape", &["conv", "shape"], &["logits"]),
        ];
        let found = find_embedding_tensor(&nodes, &consts(&["W", "b", "shape"]), "logits");
        assert_eq!(found, Ok("pool4d".to_string()));
    }

    #[test]
    fn weight_first_matmul_takes_the_data_input() {
        let nodes = [node("MatMul", &["W", "feat"], &["logits"])];
        let found = find_embedding_tensor(&nodes, &consts(&["W"]), "logits");
        assert_eq!(found, Ok("feat".to_string()));
    }

    #[test]
    fn softmax_output_is_not_a_classifier() {
        let nodes = [
            node("Gemm", &["flat", "W", "b"], &["logits"]),
            node("Softmax", &["logits"], &["probs"]),
        ];
        let err = find_embedding_tensor(&nodes, &consts(&["W", "b"]), "probs").unwrap_err();
        assert!(err.to_string().contains("Softmax"), "{err}");
    }

    #[test]
    fn spatial_conv_and_unknown_tensors_are_errors() {
        let nodes = [node("Conv", &["x", "W"], &["y"])];
        assert!(matches!(
            find_embedding_tensor(&nodes, &consts(&["W"]), "y"),
            Err(AutoEmbeddingError::NotAClassifier { .. })
        ));
        assert_eq!(
            find_embedding_tensor(&nodes, &consts(&["W"]), "nope"),
            Err(AutoEmbeddingError::NoProducer("nope".into()))
        );
    }

    #[test]
    fn a_reshape_cycle_does_not_hang() {
        let nodes = [
            node("Identity", &["a"], &["b"]),
            node("Identity", &["b"], &["a"]),
        ];
        assert!(find_embedding_tensor(&nodes, &consts(&[]), "a").is_err());
    }
}
