"""gRPC serving of exported captchakit ONNX models (`captcha serve`, `captcha client`)."""
