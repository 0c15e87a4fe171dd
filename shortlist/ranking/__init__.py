"""The ranking stage: features (context, item side, user signals), LambdaRank, DeepFM, the blended
`Scorer`, live item likes, and `rank()`.
"""
